// The book renders offline, so MathJax is not fetched from a CDN. The notebooks show no LaTeX math;
// any stray TeX stays as plain text. (Sphinx needs *a* mathjax_path when a page contains math nodes.)
