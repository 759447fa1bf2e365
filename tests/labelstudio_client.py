"""What a Label Studio user does, through ``label-studio-sdk``; run by the server test.

It runs under the Python of Label Studio's own venv (``.venv-labelstudio``), where
``label-studio`` brought ``label-studio-sdk``: the SDK pins numpy and more, so it
stays out of refineg's environment. Steps: create a project with the labeling
config, import the tasks (with their predictions), submit one annotation per task
as an annotator would (the result given for its post in ANSWERS), and write the
project's JSON export; stdout: counts and the stored predictions (model, score).

    python labelstudio_client.py BASE_URL TOKEN CONFIG.xml TASKS.json ANSWERS.json OUT.json IMAGES

IMAGES (under LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT) becomes the project's Local files
storage: Label Studio serves ``/data/local-files/?d=...`` only under such a storage.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from label_studio_sdk.client import LabelStudio


def main(
    base_url: str, token: str, config: str, tasks: str, answers: str, out: str, images: str
) -> None:
    ls = LabelStudio(base_url=base_url, api_key=token, timeout=120)
    project = ls.projects.create(
        title="refineg test", label_config=Path(config).read_text(encoding="utf-8")
    )
    ls.import_storage.local.create(project=project.id, path=images, title="images")
    imported = ls.projects.import_tasks(
        id=project.id, request=json.loads(Path(tasks).read_text(encoding="utf-8"))
    )
    by_post = json.loads(Path(answers).read_text(encoding="utf-8"))
    done = 0
    for task in ls.tasks.list(project=project.id, fields="all"):
        post = task.data["refineg"]["id"]
        if post in by_post:
            ls.annotations.create(id=task.id, result=by_post[post], was_cancelled=False)
            done += 1
    stored = [  # the pre-annotations as Label Studio holds them
        {"model_version": p.model_version, "score": p.score, "regions": len(p.result or [])}
        for p in ls.predictions.list(project=project.id)
    ]
    export = b"".join(ls.projects.exports.download_sync(project.id, export_type="JSON"))
    Path(out).write_bytes(export)
    summary = {"imported": imported.task_count, "annotated": done, "predictions": stored}
    print(json.dumps(summary))


if __name__ == "__main__":
    main(*sys.argv[1:8])
