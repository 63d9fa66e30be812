"""A stand-in Bitrix24 portal and OAuth server for tests, demos and benchmarks.

Never imported by ``callbridge``: tests, benchmarks and the demo talk to it over HTTP or ASGI.
"""

__version__ = "0.1.0"
