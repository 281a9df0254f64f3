"""The fedloom ServerApp: run loop, evaluation, results folder."""
