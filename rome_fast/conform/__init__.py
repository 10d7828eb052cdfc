"""Black-box conformance of editors under test: cases, properties, verdicts, public-code
adapters."""
