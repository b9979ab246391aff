"""The environment `embedmig init` copies (this file is not copied): README, env.py, script.py.mako, versions/."""
