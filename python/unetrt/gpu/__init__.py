"""The GPU data path: device buffers, streams and the frames-in-flight scheduler.

`device` wraps the CUDA part of the C++ module (``unetrt._core.cuda``, compiled when the
build found nvcc) and its CPU twin; `scheduler` keeps several frames in flight on any
`device.Device`; `executor` is the `unetrt.pipeline.Executor` built on them.
"""
