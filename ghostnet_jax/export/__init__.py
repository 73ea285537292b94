"""Export a checkpoint's network for deployment: ONNX, LiteRT (TFLite) or StableHLO, float32 or int8.

    python -m ghostnet_jax.export --checkpoint DIR --format {onnx,tflite,stablehlo} --output FILE
        [--int8 --calibration-data NAME [--calibration-steps K]]

`cli` is the command; `deploy` the network in deploy form; `stablehlo`, `onnx_format`, `litert` one format each;
`calibration` the int8 calibration images.
"""
