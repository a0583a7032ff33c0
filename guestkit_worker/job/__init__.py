"""The job document and its verdicts: protocol, decoding, admission checks, outcome documents,
job states and the package's errors.  The lowest layer: imports nothing else of the package."""
