"""Plain helpers the library, the commands and the edge demo share (no TensorFlow, no Keras).

- `errors`: the exceptions the library raises (`UserError`, `ModelFileError`, ...) and `run_cli`,
  which turns them into `prog: error: ...` and an exit code;
- `fileio`: atomic writes of files and folders, checksums, what a failed write means;
- `faults`: named fault points the reliability tests trigger;
- `progress`: the progress lines of the long commands;
- `sizes`: frame sizes (`HxW`) from the command line, checked.

`stt_keras.errors`, `stt_keras.fileio`, `stt_keras.faults`, `stt_keras.progress` and
`stt_keras.sizes` are the same modules under their earlier names.
"""
