"""The add-on's Blender-independent part: camera math, region, engine process, protocol, run state machine, run
files, PLY reader. No module here imports ``bpy`` (directly or through another add-on module;
tests/test_layout_walls.py checks), so all of it runs under plain pytest and could serve another host."""
