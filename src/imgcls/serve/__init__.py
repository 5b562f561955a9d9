"""`imgcls serve`: a bundle as a local web page and JSON API (FastAPI + uvicorn), with dynamic batching.

  config.py     ServeConfig: upload and pixel limits, decode threads, batching window, allowed hosts, CORS
  uploads.py    multipart uploads read in memory within the limits (413 / 415 / 422)
  batching.py   DynamicBatcher: requests arriving together share one model call
  lookalikes.py the training images' embedding index, held in memory, and thumbnails
  service.py    ModelService: bounded decoding, batched predictions, explanations, look-alikes (no HTTP)
  app.py        create_app: the FastAPI routes, Host and CORS checks, error mapping; page.html is the page at /
  server.py     serve: uvicorn with one or several worker processes

Nothing is imported here: `imgcls --help` must not load FastAPI or ONNX Runtime.
"""
