"""Unified next-scale AR model: config, vocabulary, decoder, sequence builder (issue 4)."""
