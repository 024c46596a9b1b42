"""How the dashboard tests launch a browser: Debian's Chromium, driven by Playwright (never `playwright install`)."""

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    "--host-resolver-rules=MAP evil.example 127.0.0.1",  # DNS rebinding, without a DNS server
]
