"""What people use: the question service, the HTTP app and page, the MCP server, the CLI."""
