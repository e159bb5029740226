"""The serving benchmarks, one module per job.

    settings     the command-line options of both benchmarks (declared once)
    common       shared measuring helpers: percentiles, /proc CPU and RSS, machine description
    metrics      the server's Prometheus text, parsed with prometheus_client
    servers      start the model server and the S3 API server (``rakuten_common.processes``)
    ceiling      (a) the model's in-process throughput, with and without preprocessing
    closed_loop  the closed-loop aiohttp client (runs in its own process)
    served       (b) a served model driven by that client, batching on and off
    cold_start   (c) process start -> ready, from S3 and from a folder, with the load phases
    profile      --profile: py-spy samples of the server under load
    report       (d) ratios, problems, and the text tables of the serving benchmark
    cli          ``python benchmarks/serving_benchmark.py``
    open_loop    the open-loop load generator of the overload benchmark (its own processes)
    watch        probe latency and server RSS sampled during a load
    overload     ``python benchmarks/overload.py``: capacity, then 1x and 4x capacity offered
    overload_report  the overload benchmark's figures, targets and table
"""
