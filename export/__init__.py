"""flowsr.export: LoRA merge (merge.py), ONNX export and verification (onnx_export.py), TensorRT engines (tensorrt_engine.py)."""
