"""What people use: the HTTP app and page, the MCP server, the CLI (each over `lib.answering.service`)."""
