"""`monitor demo`: serve the bundled site and a Slack-like receiver on 127.0.0.1, run one real cycle."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from monitor.demo.servers import SiteServer, WebhookReceiver

SITE = Path(__file__).with_name("site")
DEMO_PORT = 8765
WEBHOOK_PORT = 8766


def run_demo(config: Path, fmt: str = "table") -> dict[str, Any]:
    """Run the demo; the site keeps fixed ports so a second run sees the same URLs (and stores nothing new)."""
    from monitor.cli import console, run_cycle

    with SiteServer(SITE, port=int(os.environ.get("DEMO_PORT", DEMO_PORT))) as site, \
            WebhookReceiver(port=int(os.environ.get("DEMO_WEBHOOK_PORT", WEBHOOK_PORT))) as hook:
        os.environ["DEMO_BASE"] = site.url
        os.environ["DEMO_WEBHOOK"] = f"{hook.url}/services/T000/B000/demo"
        if fmt == "table":
            console.print(f"demo site: {site.url}  (the Indonesian article "
                          "nusantara/berita/rencana-perdamaian-28-poin.html is the user's sample)")
        stats = run_cycle(config, fmt)
        if fmt == "table":
            console.print(f"webhook receiver got {len(hook.received)} alert(s)")
            for msg in hook.received:
                console.print("  • " + str(msg["body"].get("text", ""))[:110], markup=False)
        stats["webhook_received"] = len(hook.received)
        return stats
