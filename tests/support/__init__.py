"""The tests' helpers, one module per concern; the benchmarks that drive the compose stack use them too.

base        where the project is, what the tests wait for and how (polling with a deadline)
processes   services as real local processes on loopback, configs on free ports, the `smarthome` command
peers       a test's own sockets and pages, with the keys and token the host tools and dashboard use
stack       the compose stack under a project name of its own
browser     how the dashboard tests launch Chromium
faults      faults on the compose stack, and in a container's network namespace from the host

Importing them changes nothing: the Docker tier's healthcheck interval is set by conftest.py.
"""
