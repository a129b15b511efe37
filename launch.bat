@echo off
rem One click: installs on first run (a few minutes), then starts the studio and opens the browser.
rem Flags pass through: --port N --listen --share --auth-file FILE --models-dir DIR --outputs-dir DIR (python app.py --help)
setlocal
cd /d "%~dp0"
set GRADIO_ANALYTICS_ENABLED=False
where python >nul 2>nul || (echo Python 3.10+ is needed: install it from python.org, tick "Add to PATH", and run this again. & pause & exit /b 1)
if not exist .venv\Scripts\python.exe (
  echo Creating .venv ...
  python -m venv .venv || (pause & exit /b 1)
)

rem Later clicks start at once: the stamp holds the hash of requirements.txt that was installed.
set "REQHASH="
for /f "skip=1 tokens=* delims=" %%h in ('certutil -hashfile requirements.txt SHA256') do (
  if not defined REQHASH set "REQHASH=%%h"
)
set "OLDHASH="
if exist .venv\.installed-app set /p OLDHASH=<.venv\.installed-app
if "%REQHASH%"=="%OLDHASH%" goto run

.venv\Scripts\python -c "import torch" 2>nul && goto requirements
rem PyPI's Windows torch wheels are CPU-only: with an NVIDIA GPU take the CUDA build from PyTorch's index.
if not defined TORCH_INDEX_URL (
  where nvidia-smi >nul 2>nul && set TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
)
if defined TORCH_INDEX_URL (
  .venv\Scripts\python -m pip install --extra-index-url %TORCH_INDEX_URL% torch==2.13.0 || (pause & exit /b 1)
) else (
  .venv\Scripts\python -m pip install torch==2.13.0 || (pause & exit /b 1)
)
:requirements
.venv\Scripts\python -m pip install -r requirements.txt || (pause & exit /b 1)
>.venv\.installed-app echo %REQHASH%

:run
.venv\Scripts\python app.py %*
if errorlevel 1 pause
