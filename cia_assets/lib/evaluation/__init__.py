"""Measuring the product: answer quality, retrieval, the held-out split and the promotion verdict."""
