"""The device server (``archsearch device-serve``): times ONNX models on the target device for a search
that runs elsewhere. Torch-free: a device needs ONNX Runtime and onnx only.

* :mod:`.protocol`: what travels (endpoints, the job, the answer), for the server and the client alike;
* :mod:`.server`: the HTTP server, its limits and its job log;
* :mod:`._job`: one job, in a child process with a wall-clock and memory limit.

The client is the ``remote`` latency backend (:mod:`archsearch.measure.remote`).
"""
