"""vLLM /metrics scraping into the health board (a loopback server speaking vLLM's format)."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from iir.policies.health import HealthBoard, MetricsScraper, parse_vllm_metrics
from iir.table import Backend
from tests.policies.conftest import _serve

METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 5.0
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
"""


def test_parse():
    assert parse_vllm_metrics(METRICS) == {"waiting": 5.0, "running": 2.0}
    assert parse_vllm_metrics("") == {"waiting": 0.0, "running": 0.0}


async def test_scrape_reports_queue():
    app = web.Application()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=METRICS)

    app.router.add_get("/metrics", metrics)
    runner, url = await _serve(app)
    board = HealthBoard()
    backends = {
        "gpu": Backend("gpu", "vllm", "openai", f"{url}/v1", ("tiny",)),
        "dead": Backend("dead", "vllm", "openai", "http://127.0.0.1:9/v1", ("tiny",)),
        "cloud": Backend("cloud", "openai", "openai", "http://127.0.0.1:9/v1", ("x",)),
    }
    scraper = MetricsScraper(board, lambda: backends, timeout=1.0)
    assert scraper.metrics_url(backends["gpu"]) == f"{url}/metrics"
    async with aiohttp.ClientSession() as session:
        assert await scraper.scrape_once(session) == 1  # the dead one is skipped, not fatal
    assert board.load("gpu") == 7.0
    assert board.load("dead") == 0.0
    await runner.cleanup()
