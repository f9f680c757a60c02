"""Shared test configuration: pytester for testing the pytest plugin itself."""

pytest_plugins = ["pytester"]
