"""aqe-mcp: an optimized MCP server for quality-engineering tools."""

__version__ = "3.0.0"
SERVER_NAME = "aqe-mcp"
