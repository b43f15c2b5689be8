"""The testing corner: tiny random pipelines for tests, docs and ``hasten make-tiny``; never used when sampling."""
