FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY driftrec driftrec
COPY streams streams
COPY models models
COPY online online
RUN pip install --no-cache-dir '.[train]'
EXPOSE 8000 9108
CMD ["driftrec", "serve", "--host", "0.0.0.0"]
