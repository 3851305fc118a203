# One image per role: `docker build --target reader .` (also worker, trainer).
# The reader and the worker need no training libraries; only the trainer installs TensorFlow.
FROM python:3.11-slim AS base
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
# driftrec/streams, driftrec/models and driftrec/online link to these three folders.
COPY driftrec driftrec
COPY streams streams
COPY models models
COPY online online
RUN pip install --no-cache-dir .

FROM base AS worker
EXPOSE 9108
CMD ["driftrec", "worker"]

FROM base AS trainer
RUN pip install --no-cache-dir '.[train]'
CMD ["driftrec", "train", "--every", "1h"]

# Last, so a plain `docker build .` gives the reader.
FROM base AS reader
EXPOSE 8000
CMD ["driftrec", "serve", "--host", "0.0.0.0"]
