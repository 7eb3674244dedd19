"""Using a trained run on new images: the loaded model, thresholds, predict over files, ONNX export and its runner, the local server."""
