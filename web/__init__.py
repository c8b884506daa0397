"""HTTP API, WebRTC live view and the console page."""
