"""flowsr.export: export specs (spec.py), LoRA merge (merge.py), ONNX export and verification (onnx_export.py, onnxruntime_graph.py), TensorRT engines (tensorrt_engine.py)."""
