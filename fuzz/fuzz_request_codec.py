"""atheris harness: ``targets.request_codec`` (see fuzz/targets.py and fuzz/harness.py)."""

from harness import main

if __name__ == "__main__":
    main("request_codec")
