# In-repo runs load the plugin even when compresslab is not installed as a package (the
# pytest11 entry point does it for installed copies; pytest dedupes the two).
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "src"))
