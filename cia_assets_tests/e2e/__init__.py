"""End-to-end tests: the packaged models served by llama.cpp, the `cia` CLI as a subprocess,
`cia dev`, headless Chromium and the learning loop."""
