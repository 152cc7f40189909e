"""From retrieved code to a cited, grounded answer: prompt, citations, grounding, the answerer."""
