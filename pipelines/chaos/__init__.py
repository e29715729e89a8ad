"""The chaos suite: faults injected into the running lakehouse, and the accounting after them."""
