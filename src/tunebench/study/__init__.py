"""Studies: the resumable runner over a study's cells, the SQLite results store, and the four-pillar report.

    runner.run_study(study, study_dir)      run every cell's stages into runs/<study>/results.db
    report.write_report(study_dir, "md")    quality, time and cost to train, inference cost, break-even
"""
