"""`SafeDetectionCheckpointer`: detectron2's `DetectionCheckpointer` (same "model" / "optimizer" /
"scheduler" / "iteration" handling, same missing/unexpected key reports, same matching heuristics) that

- reads every file through the safe readers of :mod:`.readers` (no code from a checkpoint ever runs), only
  regular files, and refuses weights that would load silently wrong (:mod:`.values`);
- refuses a resume whose checkpoint has other shapes than the model (a config changed since it was written);
- downloads http(s) MODEL.WEIGHTS once into the cache (:func:`.files.cached_download`);
- writes checkpoints and ``last_checkpoint`` atomically (:func:`.files.atomic_write`);
- resumes from the newest checkpoint that can be read: when the one ``last_checkpoint`` names is
  truncated, corrupt or missing (or ``last_checkpoint`` is empty), it logs which file and why and tries
  the next newest;
- fine-tunes across class counts: loading weights trained on another number of classes loads every tensor
  whose shape fits (as detectron2 does) and says in one message that the class head starts fresh, naming
  its parameters, instead of shape and missing-key warnings.
"""
import glob
import os
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlparse, urlsplit

import torch
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import _IncompatibleKeys

from .files import TEMPORARY_SUFFIX, atomic_write, cached_download, is_url
from .readers import CheckpointFileError, check_regular_file, read_checkpoint_file
from .values import check_weight_values

__all__ = ["SafeDetectionCheckpointer"]

LAST_CHECKPOINT = "last_checkpoint"
# The tensors whose shape follows MODEL.SEM_SEG_HEAD.NUM_CLASSES (the classifier has one output more: no object).
CLASS_HEAD = ("sem_seg_head.predictor.class_embed.weight", "sem_seg_head.predictor.class_embed.bias",
              "criterion.empty_weight")  # fmt: skip
DETECTRON2_PREFIX = "detectron2://"
DETECTRON2_URL = "https://dl.fbaipublicfiles.com/detectron2/"


def _split_loader_query(url: str) -> Tuple[str, str]:
    """(the URL to download, "?matching_heuristics=..." or ""): detectron2's query parameter is an option of
    the loader; the rest of the query (a token, a file id) belongs to the server and is kept verbatim."""
    parts = urlsplit(url)
    items = parts.query.split("&") if parts.query else []
    loader = [item for item in items if item.split("=", 1)[0] == "matching_heuristics"]
    server = [item for item in items if item not in loader]
    return parts._replace(query="&".join(server)).geturl(), "?" + "&".join(loader) if loader else ""


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """detectron2's DetectionCheckpointer with safe readers, atomic saves, URL weights and a resume that
    falls back to the newest readable checkpoint (see the module docstring)."""

    _loading_file = ""  # the file being read, for messages about its contents
    _restores_training_state = False  # this load also restores checkpointables (a resume)

    # ---- reading

    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        if path and path.startswith(DETECTRON2_PREFIX):  # detectron2's model zoo, downloaded here rather than by iopath
            path = DETECTRON2_URL + path[len(DETECTRON2_PREFIX):]
        if path and is_url(path):
            return self._load_url(path, checkpointables)
        if path:
            check_regular_file(urlparse(path)._replace(query="").geturl())  # detectron2 reads "?matching_heuristics"
        self._restores_training_state = checkpointables is None or bool(checkpointables)
        try:
            return super().load(path, checkpointables)
        finally:
            self._parsed_url_during_load = None  # detectron2 leaves it set when reading the file fails

    def _load_url(self, url: str, checkpointables: Optional[List[str]]) -> Dict[str, Any]:
        download_url, loader_query = _split_loader_query(url)
        local = cached_download(download_url)
        try:
            return self.load(local + loader_query, checkpointables)
        except CheckpointFileError as error:
            if os.path.exists(local):  # inside the cache: cached_download refuses URLs that would leave it
                os.remove(local)
            raise CheckpointFileError(
                f"{url} was downloaded to {local} but cannot be loaded; the cached copy was removed, so the next "
                f"run downloads it again. {error}"
            ) from error

    def _load_file(self, filename: str) -> Dict[str, Any]:
        self._loading_file = filename
        if os.path.splitext(filename)[1] in (".pkl", ".pyth"):
            checkpoint = read_checkpoint_file(filename)
            if checkpoint["__author__"] != "Caffe2":
                self.logger.info("Reading a file from '%s'", checkpoint["__author__"])
            return checkpoint
        # other extensions: detectron2's handling of a "?matching_heuristics=True" query and of bare
        # state_dicts, reading the file through `_torch_load` below
        return super()._load_file(filename)

    def _torch_load(self, filename: str) -> Dict[str, Any]:
        return read_checkpoint_file(filename)

    def _log_incompatible_keys(self, incompatible: _IncompatibleKeys) -> None:
        shapes = {entry[0]: entry[1:] for entry in incompatible.incorrect_shapes if entry[0] in CLASS_HEAD}
        if shapes:
            checkpoint_shape, model_shape = next(iter(shapes.values()))  # each has classes + 1 rows
            self.logger.info(
                "Fine-tuning from weights trained on %d classes into a model of %d: the class head starts fresh "
                "(%s); every other tensor whose shape fits is loaded",
                checkpoint_shape[0] - 1, model_shape[0] - 1,
                ", ".join(f"{key} {checkpoint} -> {model}" for key, (checkpoint, model) in shapes.items()),
            )  # fmt: skip
            incompatible = incompatible._replace(
                missing_keys=[key for key in incompatible.missing_keys if key not in shapes],
                incorrect_shapes=[entry for entry in incompatible.incorrect_shapes if entry[0] not in shapes],
            )
        super()._log_incompatible_keys(incompatible)

    def _convert_ndarray_to_tensor(self, state_dict: Dict[str, Any]) -> None:
        # fvcore calls this on the weights under the model's names (after detectron2's renaming), right before
        # comparing shapes and loading: the last point where wrong values can be refused
        super()._convert_ndarray_to_tensor(state_dict)
        check_weight_values(self._loading_file, state_dict, self.model.state_dict())

    def _load_model(self, checkpoint: Dict[str, Any]) -> Any:
        incompatible = super()._load_model(checkpoint)
        if incompatible.incorrect_shapes and self._restores_training_state and self.checkpointables.keys() & checkpoint:
            # fvcore skipped these weights with a warning, but the optimizer state saved with them has the old
            # shapes and would fail at the first step with a bare tensor-size error
            shapes = "; ".join(f"{key}: {tuple(saved)} in the checkpoint, {tuple(model)} in the model"
                               for key, saved, model in incompatible.incorrect_shapes)
            raise ValueError(
                f"Cannot resume from {self._loading_file}: the model's shapes differ from the checkpoint's ({shapes}). "
                "The config changed since it was written (e.g. MODEL.MASK_FORMER.NUM_OBJECT_QUERIES or the class "
                "count); resume with the config it was written with, or start a new run in another OUTPUT_DIR with "
                f"MODEL.WEIGHTS {self._loading_file} to fine-tune from its weights."
            )
        return incompatible

    # ---- writing

    def save(self, name: str, **kwargs: Any) -> None:
        """detectron2's save, written to a temporary file that is renamed to ``<name>.pth`` once complete."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write(os.path.join(self.save_dir, LAST_CHECKPOINT), lambda f: f.write(last_filename_basename.encode()))

    # ---- resuming

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """With ``resume`` and a ``last_checkpoint`` in save_dir: the newest checkpoint there that can be
        read, with all checkpointables (a CheckpointFileError listing every file and why when none can).
        Otherwise only the model from ``path``, like detectron2."""
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        self._remove_interrupted_writes()
        failures = []
        for candidate in self._resume_candidates():
            try:
                return self.load(candidate)
            except CheckpointFileError as error:
                self.logger.warning("Cannot resume from %s: %s. Trying the next newest checkpoint.", candidate, error)
                failures.append(f"  {candidate}: {error}")
        found = "\n".join(failures) if failures else "  (no checkpoint files found)"
        raise CheckpointFileError(f"Cannot resume: no checkpoint in {self.save_dir} can be read.\n{found}")

    def _resume_candidates(self) -> List[str]:
        """The checkpoint ``last_checkpoint`` names, then the other checkpoints of save_dir, newest first."""
        tag = os.path.join(self.save_dir, LAST_CHECKPOINT)
        with open(tag) as f:
            named = f.read().strip()
        files = sorted(self.get_all_checkpoint_files(), key=lambda p: (os.path.getmtime(p), p), reverse=True)
        named_path = os.path.join(self.save_dir, named)
        if not named:
            self.logger.warning(
                "%s is empty (left by a run killed while writing it?); resuming from the newest checkpoint in %s "
                "that can be read", tag, self.save_dir,
            )
        elif not os.path.isfile(named_path):
            self.logger.warning(
                "%s names %s, which does not exist (deleted or moved?); resuming from the newest checkpoint in %s "
                "that can be read", tag, named, self.save_dir,
            )
        else:
            files = [named_path] + [p for p in files if p != named_path]
        return files

    def _remove_interrupted_writes(self) -> None:
        """Temporary files of saves that a kill interrupted (they can be gigabytes)."""
        if not self.save_to_disk:
            return
        patterns = (f"*.pth.*{TEMPORARY_SUFFIX}", f"{LAST_CHECKPOINT}.*{TEMPORARY_SUFFIX}")
        for pattern in patterns:
            for leftover in glob.glob(os.path.join(glob.escape(self.save_dir), pattern)):
                self.logger.info("Removing %s, left by a run interrupted while writing it", leftover)
                os.remove(leftover)
