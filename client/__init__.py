"""The fedloom ClientApp: local training on one partition."""
