# The torch-free face-mask service: `python -m facemask serve` on a run's exported ONNX graph, with
# requirements-serve.txt only (onnxruntime, numpy, Pillow, PyAV, FastAPI, uvicorn; no torch,
# transformers or datasets). docs/serving.md says how it was tested (the same steps in a fresh
# virtual environment; the image itself was not built where this was written: no Docker there).
#   python -m facemask export outputs/quickstart                 # writes outputs/quickstart/onnx/
#   docker build -t facemask-serve --build-arg RUN=outputs/quickstart .
#   docker run --rm -p 8000:8000 facemask-serve                  # then POST images to :8000/predict
FROM python:3.11-slim
WORKDIR /app
COPY requirements-serve.txt .
RUN pip install --no-cache-dir -r requirements-serve.txt
COPY facemask/ facemask/
ARG RUN=outputs/quickstart
# The model: config (labels), image processor, exported graphs; operating_points.json when the run
# has one (the [n] keeps COPY from failing without it).
COPY ${RUN}/config.json ${RUN}/preprocessor_config.json ${RUN}/operating_points.jso[n] /model/
COPY ${RUN}/onnx/ /model/onnx/
USER nobody
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready')"
CMD ["python", "-m", "facemask", "serve", "/model", "--backend", "onnx", "--host", "0.0.0.0", "--port", "8000"]
