# attnscope in a container: `docker build -t attnscope . && docker run -p 8501:8501 attnscope`
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends chromium make && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt pyproject.toml Makefile README.md ./
COPY app app
COPY analysis analysis
COPY kernels kernels
COPY models models
RUN make install
# Warm the caches so the first page loads fast (dequantizes the GGUF preset once).
RUN .venv/bin/attnscope trace --model smollm2-135m --text "warm up" --out /tmp/warm && rm -rf /tmp/warm
ENV STREAMLIT_SERVER_ADDRESS=0.0.0.0 STREAMLIT_SERVER_PORT=8501 HF_HUB_OFFLINE=1
EXPOSE 8501
CMD [".venv/bin/attnscope", "app", "--server.headless", "true"]
