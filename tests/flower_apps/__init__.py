"""A plain Flower app (ServerApp + ClientApp) written only against Flower's documented
Message API, as Flower's quickstart templates are: no fedloom imports. The interop tests
(tests/e2e/test_interop_e2e.py) pair each of its apps with fedloom's other one."""
