"""What starts, watches and connects the services: the one-shot session
(session.py) and the daemon's launcher and settings, the one table of
services and its renderings into supervisord configs and the Procfile, the
watchdog and the broker."""
