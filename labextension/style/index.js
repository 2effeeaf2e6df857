// the CSS is imported by JupyterLab through package.json's styleModule
import './index.css';
