"""news-monitor: watch news sources and tell analysts what is new about the stories they track."""

__version__ = "0.1.0"
