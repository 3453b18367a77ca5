#!/usr/bin/env python
"""A web page that segments an uploaded image with a DiNAT + Mask2Former model, and its API endpoint /segment.

    python demo/app.py --model coco/panoptic/dinat_l      # a model of the zoo with its released checkpoint
    python demo/app.py --config-file configs/coco/panoptic/dinat_l.yaml --opts MODEL.WEIGHTS model.pth

then open http://127.0.0.1:7860 in a browser. The page shows the model's result drawn on the image (as
demo/demo.py draws it), a table of the segments (class, score, area) and offers demo/demo.py's result files for
download; /segment takes an image and a task from gradio_client or curl (docs/DEMO.md, "Web demo"). The model is
built once and runs one request at a time, on CUDA when there is one, else on the CPU. Needs Gradio:
pip install '.[app]'.
"""
import argparse
import importlib.util
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, also when it is not installed
# dinat_m2f before detectron2 (dinat_m2f/startup.py says why first); importing it registers the model and datasets
from dinat_m2f import Predictor  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from dinat_m2f.app import PAGE_CSS, WebDemo, add_config_arguments, app_config, build_page  # noqa: E402
from dinat_m2f.engine import reuse_freed_memory  # noqa: E402

# Small images of the synthetic dataset, offered as examples on the page.
EXAMPLES = Path(__file__).resolve().with_name("examples")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--config-file", metavar="FILE", help="path to the model's config")
    model.add_argument("--model", metavar="NAME",
                       help="a model of the zoo, e.g. coco/panoptic/dinat_l (dinat_m2f.model_zoo.list_models()), "
                            "with its released checkpoint unless --opts MODEL.WEIGHTS gives one")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0: every network)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="the page's initial score threshold for instances (default 0.5)")
    add_config_arguments(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(argv)
    if importlib.util.find_spec("gradio") is None:
        raise SystemExit("The web demo needs Gradio: pip install '.[app]' (or pip install gradio)")
    cfg = app_config(args.config_file, args.model, args.opts, args.dataset)
    reuse_freed_memory()
    page = build_page(WebDemo(Predictor(cfg)), args.model or args.config_file, args.confidence_threshold,
                      examples=sorted(EXAMPLES.glob("*.jpg")))
    page.queue().launch(server_name=args.host, server_port=args.port, share=False, ssr_mode=False, css=PAGE_CSS,
                        allowed_paths=[str(EXAMPLES)])


if __name__ == "__main__":
    setup_logger(name="fvcore")  # checkpoint loading messages
    setup_logger(name="dinat_m2f")
    main()
