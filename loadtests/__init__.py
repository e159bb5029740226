"""Load tests (Locust) for rakuten-classifier: realistic products, scenarios, shapes, thresholds.

``locust --config loadtests/locust.conf -H http://127.0.0.1:8080`` or ``make loadtest``.
"""
