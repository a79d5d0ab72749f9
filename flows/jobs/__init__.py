"""The jobs: plain typed functions that plan an item, code its tiles into the archive and bring
regions back (ttft_archive.flows.jobs.raster, .dicom), with what they share (tiles, codec_setup,
task_catalog, worker_cache). They run and test without Prefect."""
