"""The central monitoring console: many stations on one screen (``nvr console``).

The console follows each station over the station's own HTTP API with a
station token; it holds no footage and never touches a station's recording.
"""
