"""Code quality: radon metrics of Python sources, JUnit test results, and the release gate."""
