"""The Diffusers image server: one Diffusers pipeline behind the OpenAI Images API, run with `python -m imageserver`
inside the diffusers engine environment. It never imports the `hub` package: that environment does not have the
hub's dependencies (the hub imports imageserver.api, which is torch-free, and never the rest).

Modules: api (options and request shapes, torch-free), jobs (a request's work, its job, events and cancellation),
pipelines (loading and calling the pipeline), rules (what the loaded pipeline accepts: sizes and call arguments,
torch-free), memory (peak memory per call), worker (the queue, batching and its one thread, running jobs with any
runner: the pipelines), previews (latents to partial images), streaming (errors and the server-sent events), files
(images kept for response_format=url), images (decoding with a pixel limit, masks, PNG/JPEG/WebP), app (the FastAPI
app and its routes), __main__ (the command line).

Rules that are not obvious:
- One pipeline call at a time: requests queue in arrival order for one worker thread (which also loads the model).
  A request waits at most `request_timeout` (queue time included) and then gets 504; a request whose client went
  away, or that timed out, is skipped if still queued and interrupted at its next denoising step if running.
- Batching (`max_batch` > 1): the oldest queued request takes along the queued requests of its shape (task, size,
  steps, guidance, strength, the other call arguments, and whether it has a negative prompt) up to max_batch images, as
  one pipeline call with one prompt and one torch.Generator per image. Image i of a request comes from seed + i whether
  it runs alone or in a batch, so a seeded request makes the same image either way (up to float rounding). After a
  batch of several, the next one waits up to `batch_wait` for more of its shape (the clients just answered are sending
  again; without it batches alternate 1, 7, 1, 7 at concurrency 8). A batch stops early only when all its requests are
  gone; one that leaves or times out just gets no answer. Instruction edits run alone.
- Streams (`stream: true`): the step callback sends each streaming request a progress event every step and, at
  evenly spaced steps, previews decoded cheaply (imageserver/previews.py); the event loop upscales and encodes them.
- What a request may set comes from the loaded pipeline, checked before the request queues: sizes in multiples of its
  VAE's scale factor (times 2 where it packs latents 2x2), and call arguments its `__call__` names. Parameters outside
  the Images API and its extensions are passed to the pipeline when it takes them (plain values: numbers, booleans,
  text); one it does not take, or a server field it has no argument for (negative_prompt on FLUX.2), is a 400 naming it
  and listing those it takes. Nothing a request asked for is dropped silently. The tasks' pipelines are derived at load
  for this (on the worker thread), so a task the model cannot do is a 400 up front too.
- Limits are checked before any work: prompt characters, then prompt tokens (a copy of the pipeline's tokenizer, in
  a thread), then each upload's pixel count from its header before it is decoded.
- Tasks share one set of weights: the loaded pipeline is the text-to-image one; image-to-image (edits without a
  mask) and inpainting (edits with a mask) are derived from it with AutoPipelineFor*.from_pipe. Instruction-editing
  pipelines (Qwen-Image-Edit, FLUX Kontext; name them in `pipeline`) serve edits themselves.
- LoRA adapters (--loras) are loaded once per load of the pipeline, under their names, into its modules, which the
  derived pipelines share, and then switched off. Before each pipeline call the worker makes the modules apply the
  call's adapter (set_adapters with its scale) or none (disable_lora), only when that differs from the last call; the
  adapter and scale are part of the batch key. A request names one with `lora` (and `lora_scale`) or with the model
  id `<served name>:<adapter>`.
- Masks follow OpenAI: fully transparent pixels are the ones to repaint. A mask without an alpha channel is read as
  Diffusers reads it: white is repainted.
- Peak memory per request: torch.cuda.max_memory_allocated (reset per job) on CUDA, the process's RSS (sampled
  while the job runs) on CPU; sent as the `x-peak-memory-mb` header and summed up at GET /memory.
"""
