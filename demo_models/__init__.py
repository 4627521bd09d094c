"""Demo-model converters: each runs in an engine environment (`python -m demo_models.X OUTDIR`) and never
imports the hub."""
