"""The HTTP edge: the FastAPI app, its dependencies, error handling and routers."""
