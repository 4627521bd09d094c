"""The Diffusers image server: one Diffusers pipeline behind the OpenAI Images API, run with `python -m imageserver`
inside the diffusers engine environment. It never imports the `hub` package: that environment does not have the
hub's dependencies (the hub imports imageserver.api, which is torch-free, and never the rest).

Modules: api (options and request shapes, torch-free), pipelines (loading and calling the pipeline, peak memory),
worker (the queue and its one thread), files (images kept for response_format=url), images (decoding, masks, PNG),
app (the FastAPI app and its routes), __main__ (the command line).

Rules that are not obvious:
- One pipeline call at a time: requests queue in arrival order for one worker thread (which also loads the model).
  A request waits at most `request_timeout` (queue time included) and then gets 504; a request whose client went
  away, or that timed out, is skipped if still queued and interrupted at its next denoising step if running.
- Tasks share one set of weights: the loaded pipeline is the text-to-image one; image-to-image (edits without a
  mask) and inpainting (edits with a mask) are derived from it with AutoPipelineFor*.from_pipe. Instruction-editing
  pipelines (Qwen-Image-Edit, FLUX Kontext; name them in `pipeline`) serve edits themselves.
- Masks follow OpenAI: fully transparent pixels are the ones to repaint. A mask without an alpha channel is read as
  Diffusers reads it: white is repainted.
- Peak memory per request: torch.cuda.max_memory_allocated (reset per job) on CUDA, the process's RSS (sampled
  while the job runs) on CPU; sent as the `x-peak-memory-mb` header and summed up at GET /memory.
"""
